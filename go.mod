module github.com/dockward/dockward

go 1.26
