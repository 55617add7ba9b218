"""Operator tools that ship with the fleet (the load generator).

`tools.dev` holds the development-only ones, which never ship.
"""
