"""Pure array stages (numpy in, numpy out, no I/O), vectorised over patches and dates."""
