"""State backends: where the record of created and adopted dispatches lives."""
