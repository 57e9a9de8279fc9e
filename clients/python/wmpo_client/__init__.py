"""Light client for the wmpo services.

Installs without torch and never imports the wmpo core, so robot computers and
trainers on other machines can talk to the services with a small footprint.
"""

__version__ = "0.1.0"
