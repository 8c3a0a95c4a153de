"""visattn: visual attention that is correct, fast and visible."""
