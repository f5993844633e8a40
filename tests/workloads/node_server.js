// A small HTTP server on Node.js (libuv: epoll, eventfds, a thread pool):
// GET /incr adds one to a counter and answers it, GET /pid answers
// process.pid. Listens on the address given as argv[2] (HOST:PORT).
const http = require('http');
const [host, port] = process.argv[2].split(':');
let counter = 0;
http.createServer((req, res) => {
  if (req.url === '/incr') { counter++; res.end(counter + '\n'); }
  else if (req.url === '/pid') { res.end(process.pid + '\n'); }
  else { res.statusCode = 404; res.end(); }
}).listen(Number(port), host);
