"""Model cards, backends (ONNX Runtime, Torch), architectures, export and ensembles."""
