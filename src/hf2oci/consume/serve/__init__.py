"""``hf2oci serve``: the Hugging Face Hub API answered from the registry (or OCI layouts), with
no copy of the files and no database: ``store`` finds images and files, ``app`` speaks HTTP."""
