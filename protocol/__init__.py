"""Wire formats of the EcoWatt system: pure, synchronous, no I/O."""
