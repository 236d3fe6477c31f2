"""The serving core of the OpenChat-3.5 service. Imports nothing from service.py."""
