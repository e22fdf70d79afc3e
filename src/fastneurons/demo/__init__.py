"""The demo: a planted OPT, real text from the standard library, `fastneurons demo`."""
