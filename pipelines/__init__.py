"""flowprep's shipped recipes (one TOML file per dataset), the demo manifest and manifest samples.

This folder is the package ``flowprep.recipes``: setup.cfg maps it (``package_dir``), so a wheel
installs it as ``flowprep/recipes/`` and an editable install imports it from here.  This file
makes it a regular package, which both the wheel and setuptools' editable finder can locate;
``flowprep.cli.recipes.recipes_dir`` asks the import system where it is.
"""
