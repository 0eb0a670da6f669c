/*
 * The sandbox process of the harness's runc pods (the baseline wasmcell's pods are measured
 * against), in the role of Kubernetes' pause image: it holds the pod's namespaces, reaps
 * orphans, and sleeps until SIGINT or SIGTERM ends it with status 0.
 */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signal) {
	(void)signal;
	_exit(0);
}

static void reap(int signal) {
	(void)signal;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

int main(void) {
	struct sigaction on_stop = {.sa_handler = stop};
	struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
	sigaction(SIGINT, &on_stop, NULL);
	sigaction(SIGTERM, &on_stop, NULL);
	sigaction(SIGCHLD, &on_child, NULL);
	for (;;) {
		pause();
	}
}
