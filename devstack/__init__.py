"""The local stack behind ``make run`` (and, later, the end-to-end tests): a private
redis-server and the services, each as its own process, started in the README's deployment
order and stopped in its termination order."""
