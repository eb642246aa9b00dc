"""Machine facts and the helpers every room shares: capabilities, machine and version info, markdown tables,
one-line errors. Imports nothing else of the suite."""
