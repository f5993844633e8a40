// A small HTTP server on the JVM (com.sun.net.httpserver: many threads, NIO
// with epoll, the JVM's pre-close socket, its perf data file mapped shared):
// GET /incr adds one to a counter and answers it, GET /pid answers its pid.
// Run as a single source file: `java Counter.java PORT`.
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
import java.util.concurrent.atomic.AtomicLong;

public class Counter {
    public static void main(String[] args) throws Exception {
        AtomicLong counter = new AtomicLong();
        HttpServer s = HttpServer.create(new InetSocketAddress("0.0.0.0", Integer.parseInt(args[0])), 16);
        s.createContext("/incr", ex -> {
            byte[] b = (counter.incrementAndGet() + "\n").getBytes();
            ex.sendResponseHeaders(200, b.length);
            ex.getResponseBody().write(b);
            ex.close();
        });
        s.createContext("/pid", ex -> {
            byte[] b = (ProcessHandle.current().pid() + "\n").getBytes();
            ex.sendResponseHeaders(200, b.length);
            ex.getResponseBody().write(b);
            ex.close();
        });
        s.start();
        System.out.println("listening");
    }
}
