from manycore_httpreceiver.service import main

main()
