"""The AWS side of a configuration, as code.

- :mod:`confluence.infra.template`: the CloudFormation template of every resource a Batch run
  needs (``confluence infra template``), rendered from the configuration;
- :mod:`confluence.infra.entrypoint`: the entrypoint of the project's own image
  (Dockerfile at the repository root).
"""
