from mhd.api.openapi import main

main()
