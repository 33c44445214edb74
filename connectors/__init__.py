"""The remote protocols, one module per kind; connectors/emulator/ serves them all."""
