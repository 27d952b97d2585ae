from manycore_receiver.service import main

main()
