// A small HTTP server: GET /incr adds one to a counter and answers it,
// GET /pid answers os.Getpid(). Busy goroutines keep the scheduler and
// its preemption (SIGURG) at work.
package main

import (
	"fmt"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
)

func main() {
	var counter int64
	var mu sync.Mutex
	data := map[int]int{}
	for i := 0; i < 4; i++ {
		go func(id int) {
			x := 0
			for {
				x++
				if x%10000000 == 0 {
					mu.Lock()
					data[id] = x
					mu.Unlock()
				}
			}
		}(i)
	}
	http.HandleFunc("/incr", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d\n", atomic.AddInt64(&counter, 1))
	})
	http.HandleFunc("/pid", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%d\n", os.Getpid())
	})
	fmt.Println("listening")
	if err := http.ListenAndServe(os.Args[1], nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
