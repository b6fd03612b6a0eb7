"""Build glue: cffi compiles native/*.c into overlay._native (see overlay/_build.py)."""

from setuptools import setup

setup(cffi_modules=["overlay/_build.py:ffibuilder"])
