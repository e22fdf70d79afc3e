"""Model access: the architecture table, checkpoint loading, layer offloading."""
