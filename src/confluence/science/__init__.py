"""Pure science functions of the reference modules: arrays in, arrays out, no I/O."""
