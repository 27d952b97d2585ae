from manycore_mxserver.service import main

main()
