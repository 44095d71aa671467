//go:build unix

package journal

import (
	"os"
	"syscall"
)

// fileID returns f's device and inode numbers.
func fileID(f *os.File) (dev, ino uint64, ok bool) {
	fi, err := f.Stat()
	if err != nil {
		return 0, 0, false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, false
	}
	// The field types differ between platforms, hence the conversions.
	return uint64(st.Dev), uint64(st.Ino), true
}
