from hf2oci.cli import main

main()
