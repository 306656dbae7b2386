from mhd.api.server import main

main()
