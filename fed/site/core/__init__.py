"""The site's core: job specs, state machines, storage, components, tokens, policy.

Nothing here serves HTTP or calls other sites; the service and the API build on it.
"""
