from manycore_redis.service import main

main()
