"""Model files made up for tests, the demo and the catalogue probe (``synthetic_model``)."""
