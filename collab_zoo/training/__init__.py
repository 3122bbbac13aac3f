"""The importable code behind train.py and validate.py."""
