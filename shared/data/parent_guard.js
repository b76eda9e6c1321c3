// Preloaded into a ferryman the local driver starts (`node --require <this> runGlobal.js`):
// the process ends when the orchestrator process that started it is gone, as our own worker
// does (shared/worker/main.py watch_parent), so a deploy killed with SIGKILL leaves no
// ferryman consuming behind it. ORCHESTRATOR_PARENT_PID names that process; unset (a
// container in a cluster), nothing is watched.
'use strict';
const parent = Number.parseInt(process.env.ORCHESTRATOR_PARENT_PID || '', 10);
if (Number.isInteger(parent) && parent > 1) {
  const timer = setInterval(() => {
    try {
      process.kill(parent, 0); // signal 0: is it there?
    } catch (error) {
      if (error.code === 'ESRCH') {
        clearInterval(timer);
        process.kill(process.pid, 'SIGTERM'); // ferryman's own shutdown, else the default
      }
    }
  }, 1000);
  timer.unref(); // never what keeps the process alive
}
