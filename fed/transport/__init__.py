"""How bytes cross a party boundary. `base` defines the interface; one backend per module."""
