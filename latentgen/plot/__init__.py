"""Comparison grids: A1111's X/Y/Z plot (``xyz``: the axes, the calls, the labeled grid)."""
