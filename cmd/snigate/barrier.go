package main

import (
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// notifyBarrier waits until systemd has processed every notification sent
// before it, so that STOPPING=1 is not lost when the process exits right
// after. It follows sd_notify_barrier(3): send BARRIER=1 with the write end
// of a pipe, close our copy, and wait for the read end to see the other
// copy closed by the service manager. Without NOTIFY_SOCKET it does nothing.
func notifyBarrier(timeout time.Duration) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("notify barrier: pipe: %w", err)
	}
	defer unix.Close(p[0])

	// SockaddrUnix reads a leading '@' as an abstract socket, as
	// NOTIFY_SOCKET means it.
	sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		unix.Close(p[1])
		return fmt.Errorf("notify barrier: socket: %w", err)
	}
	err = unix.Sendmsg(sock, []byte("BARRIER=1"), unix.UnixRights(p[1]),
		&unix.SockaddrUnix{Name: addr}, 0)
	unix.Close(sock)
	unix.Close(p[1])
	if err != nil {
		return fmt.Errorf("notify barrier: send to %s: %w", addr, err)
	}

	fds := []unix.PollFd{{Fd: int32(p[0]), Events: unix.POLLIN}}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("notify barrier: no answer within %v", timeout)
		}
		n, err := unix.Poll(fds, int(left.Milliseconds())+1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("notify barrier: poll: %w", err)
		}
		if n > 0 && fds[0].Revents&(unix.POLLHUP|unix.POLLIN) != 0 {
			return nil
		}
	}
}
