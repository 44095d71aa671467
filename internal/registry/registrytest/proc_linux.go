package registrytest

import "syscall"

// sysProcAttr has the kernel kill the registry if the test binary dies
// without running its cleanups (a panic or a -timeout).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
