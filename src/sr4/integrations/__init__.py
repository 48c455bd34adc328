"""Bridges between sr4 and other tools' model loaders (each module needs its own optional extra)."""
