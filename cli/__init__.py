"""The ``dcd-deploy`` command line (installed as ``dcd_deploy_cli``): thin wrappers over the library."""
