from manycore_transformer.service import main

main()
