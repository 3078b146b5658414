"""Reading a checkpoint, inferring its architecture and building the network it needs."""
