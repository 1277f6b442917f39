"""What runs a party task: the interface (``base``) and its implementations."""
