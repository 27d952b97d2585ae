from manycore_backdata.service import main

main()
