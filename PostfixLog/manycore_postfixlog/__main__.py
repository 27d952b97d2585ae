from manycore_postfixlog.service import main

main()
