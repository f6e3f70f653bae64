// Chat room on Node's net module. Usage: node chat_node.js PORT
const net = require('net');
const members = new Map(); // the room: name -> socket
let guests = 0;
const broadcast = (from, line) => {
  for (const sock of members.values()) if (sock !== from) sock.write(line + '\n');
};
net.createServer({ noDelay: true }, (sock) => {
  let name = `guest${++guests}`, buf = '';
  const leave = () => {
    if (members.get(name) !== sock) return;
    members.delete(name);
    broadcast(sock, `* ${name} left`);
  };
  sock.write(`welcome ${name}\n`);
  broadcast(sock, `* ${name} joined`);
  members.set(name, sock);
  sock.setEncoding('utf8');
  sock.on('data', (data) => {
    const lines = (buf + data).split('\n');
    buf = lines.pop();
    for (const line of lines) {
      if (line === 'QUIT') { sock.end('bye\n'); leave(); break; }
      if (!line.startsWith('NICK ')) broadcast(sock, `${name}: ${line}`);
      else if (members.has(line.slice(5))) sock.write('error: nickname taken\n');
      else {
        members.delete(name);
        name = line.slice(5);
        members.set(name, sock);
        sock.write(`you are now ${name}\n`);
      }
    }
  });
  sock.on('close', leave);
  sock.on('error', () => {});
}).listen(parseInt(process.argv[2]), '127.0.0.1', 4096);
