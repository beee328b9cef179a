"""Data sets: the interchange layout, public RRSIS layouts, the synthetic scene generator."""
