"""The mailstead admin web panel (Flask, ``create_app(config)`` with one blueprint per area).

The panel itself is built in its own issue; this package exists now so the distribution has the
design card's three import packages from the start.
"""
