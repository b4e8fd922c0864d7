"""Configuration: YAML in, frozen dataclasses out (see ``schema``), every problem reported."""
