"""The live exploration app: `create_app(config)`, routes, sessions and the command line."""
