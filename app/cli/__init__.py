"""The ``facegen`` command line: ``main`` parses, one module per command runs it."""
