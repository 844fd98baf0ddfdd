"""Background masking of tiles from land-cover polygons, and masked fine-tuning."""
