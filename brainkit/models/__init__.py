"""Models: the four methods' networks and the model-source factory (hub id, local folder, tiny:, offline:)."""
